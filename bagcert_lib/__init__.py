"""bagcert_lib: BagCert (Metzen & Yatsura, ICLR 2021), certified defenses against patch attacks.

Modules follow the paper: ``model`` (region scorer, §3.2 / App. A.1), ``heads`` (Heaviside
straight-through, sigmoid, softmax; App. A.3), ``loss`` (margin loss, §3.3), ``certifier``
(Conditions 3.2 and 3.3, §3.1), ``attack`` (PGD patch attack, App. A.2), ``data``, ``train``.
"""
from .attack import AttackResult, patch_attack
from .certifier import Certificate, ScoreMaps, certify, certify_model
from .config import TrainConfig, grids, profile_config
from .heads import HEADS, get_head, heaviside
from .loss import margin_loss, one_hot_penalty, total_loss
from .model import RegionScorer, cifar_scorer, geometry, imagenet_scorer, num_parameters
from .pretrained import load_pretrained
from .runtime import region_scores

__version__ = "0.1.0"

__all__ = [
    "AttackResult", "Certificate", "HEADS", "RegionScorer", "ScoreMaps", "TrainConfig",
    "certify", "certify_model", "cifar_scorer", "geometry", "get_head", "grids", "heaviside",
    "imagenet_scorer", "load_pretrained", "margin_loss", "num_parameters", "one_hot_penalty", "patch_attack",
    "profile_config", "region_scores", "total_loss",
]
