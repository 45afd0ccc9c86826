"""ImageNet-1k target zoo (used by the ImageNet and ImageNette protocols, the latter through ``RestrictLogits``).

Every timm entry names its weights with an explicit tag (``resnet50.tv_in1k``, never a bare ``resnet50``: the
default tag of an architecture changes between timm releases). Its preprocessing (mean/std, native input size,
interpolation, crop fraction), license and weights location are written here as data, copied from timm 1.0.31's
pretrained config of that tag; ``tests/test_targets_hub.py`` checks them against the installed timm's config, so a
timm release that changes one fails the tests instead of silently changing what the protocol measures (and
importing the zoo does not import timm). The choice follows the transfer-attack literature: the torchvision CNNs,
the TF-slim Inception family with its adversarially trained versions, three vision transformers, and one
L-inf adversarially trained ResNet-50.

Not pinned yet: the Hub revisions and sha256 of these files were not measured where the entries were written
(no network). ``TargetSpec.pinned`` is False for each of them, ``unpinned_targets()`` lists them, and a protocol
using them must stay provisional until ``revision``/``sha256`` are filled in from
``transferbench targets fetch`` on a machine with Hub access.
"""

from __future__ import annotations

from targets.zoo import TIMM_PREFIX, Family, HubWeights, TargetSpec, UrlWeights, WeightsSource, register

UNPINNED = "Hub revision and sha256 not measured yet (no network where the entry was written): not pinned."

RESNET_CITATION = "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016."
TORCHVISION = "Weights: torchvision (TorchVision maintainers, https://github.com/pytorch/vision), ported by timm."
INCEPTION_V3_CITATION = (
    "Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. Rethinking the Inception Architecture for Computer Vision. CVPR 2016."
)

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # timm's IMAGENET_DEFAULT_MEAN / _STD
INCEPTION_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's IMAGENET_INCEPTION_MEAN / _STD
Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

# name, timm weights, family, citation, notes, (mean, std), native side, interpolation, crop_pct, license
_TIMM_ENTRIES: tuple[tuple[str, str, Family, str, str, Stats, int, str, float, str], ...] = (
    ("imagenet-resnet50", "resnet50.tv_in1k", "cnn", f"{RESNET_CITATION} {TORCHVISION}",
     "torchvision IMAGENET1K_V1, published top-1 76.13%.",
     IMAGENET_STATS, 224, "bilinear", 0.875, "bsd-3-clause"),
    ("imagenet-vgg16", "vgg16.tv_in1k", "cnn",
     "Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image Recognition. ICLR 2015. "
     f"{TORCHVISION}", "torchvision IMAGENET1K_V1 (no batch norm), published top-1 71.59%.",
     IMAGENET_STATS, 224, "bilinear", 0.875, "bsd-3-clause"),
    ("imagenet-densenet121", "densenet121.tv_in1k", "cnn",
     "Huang, Liu, van der Maaten, Weinberger. Densely Connected Convolutional Networks. CVPR 2017. "
     f"{TORCHVISION}", "torchvision IMAGENET1K_V1, published top-1 74.43%.",
     IMAGENET_STATS, 224, "bicubic", 0.875, "apache-2.0"),
    ("imagenet-mobilenetv2", "mobilenetv2_100.ra_in1k", "cnn",
     "Sandler, Howard, Zhu, Zhmoginov, Chen. MobileNetV2: Inverted Residuals and Linear Bottlenecks. CVPR 2018. "
     "Weights: trained by R. Wightman (timm, RandAugment recipe).", "width 1.0; timm's own training run.",
     IMAGENET_STATS, 224, "bicubic", 0.875, "apache-2.0"),
    ("imagenet-inception-v3", "inception_v3.tf_in1k", "cnn",
     f"{INCEPTION_V3_CITATION} Weights: TF-slim release, ported by timm.",
     "The TF-slim weights, the normally trained twin of imagenet-inception-v3-adv.",
     INCEPTION_STATS, 299, "bicubic", 0.875, "apache-2.0"),
    ("imagenet-xception", "legacy_xception.tf_in1k", "cnn",
     "Chollet. Xception: Deep Learning with Depthwise Separable Convolutions. CVPR 2017. "
     "Weights: the Keras release, ported by R. Cadene (pretrainedmodels) and re-released by timm.",
     "Chollet's original Xception; timm hosts it as a GitHub release file, not on the Hub (sha256 not pinned).",
     INCEPTION_STATS, 299, "bicubic", 0.8975, "apache-2.0"),
    ("imagenet-vit-b16", "vit_base_patch16_224.augreg_in21k_ft_in1k", "vit",
     "Dosovitskiy et al. An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale. ICLR 2021. "
     "Weights: Steiner et al. How to train your ViT? Data, Augmentation, and Regularization in Vision "
     "Transformers. TMLR 2022.", "ImageNet-21k pre-training, ImageNet-1k fine-tuning (AugReg).",
     INCEPTION_STATS, 224, "bicubic", 0.9, "apache-2.0"),
    ("imagenet-deit-b", "deit_base_patch16_224.fb_in1k", "vit",
     "Touvron, Cord, Douze, Massa, Sablayrolles, Jegou. Training data-efficient image transformers & distillation "
     "through attention. ICML 2021.", "DeiT-B without the distillation token, trained on ImageNet-1k only.",
     IMAGENET_STATS, 224, "bicubic", 0.9, "apache-2.0"),
    ("imagenet-swin-b", "swin_base_patch4_window7_224.ms_in22k_ft_in1k", "vit",
     "Liu et al. Swin Transformer: Hierarchical Vision Transformer using Shifted Windows. ICCV 2021.",
     "Swin-B, window 7, ImageNet-22k pre-training, ImageNet-1k fine-tuning.",
     IMAGENET_STATS, 224, "bicubic", 0.9, "mit"),
    ("imagenet-inception-v3-adv", "inception_v3.tf_adv_in1k", "adversarially-trained",
     f"Kurakin, Goodfellow, Bengio. Adversarial Machine Learning at Scale. ICLR 2017. {INCEPTION_V3_CITATION}",
     "Adversarially trained (single-step attacks) Inception-v3, the 'adv_inception_v3' TF-slim release.",
     INCEPTION_STATS, 299, "bicubic", 0.875, "apache-2.0"),
    ("imagenet-incres-v2-ens-adv", "inception_resnet_v2.tf_ens_adv_in1k", "adversarially-trained",
     "Tramer, Kurakin, Papernot, Goodfellow, Boneh, McDaniel. Ensemble Adversarial Training: Attacks and "
     "Defenses. ICLR 2018. Architecture: Szegedy, Ioffe, Vanhoucke, Alemi. Inception-v4, Inception-ResNet and the "
     "Impact of Residual Connections on Learning. AAAI 2017.",
     "'ens_adv_inception_resnet_v2': trained on adversarial examples transferred from an ensemble.",
     INCEPTION_STATS, 299, "bicubic", 0.8975, "apache-2.0"),
)  # fmt: skip

# Weights timm hosts outside the Hub (its pretrained config gives a URL instead of an hf_hub_id).
_URL_WEIGHTS = {
    "legacy_xception.tf_in1k": "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
    "xception-43020ad28.pth",
}


def _timm_entry(entry: tuple[str, str, Family, str, str, Stats, int, str, float, str]) -> TargetSpec:
    name, timm_name, family, citation, notes, (mean, std), side, interpolation, crop_pct, license = entry
    arch, _, tag = timm_name.partition(".")
    url = _URL_WEIGHTS.get(timm_name)
    source: WeightsSource = (UrlWeights(url, url.rsplit("/", 1)[1], None, state_key=None) if url
                             else HubWeights(f"timm/{timm_name}", "model.safetensors"))  # fmt: skip
    return TargetSpec(name=name, family=family, architecture=f"{TIMM_PREFIX}{arch}", num_classes=1000, mean=mean,
                      std=std, source=source, license=license, citation=citation, notes=f"{notes} {UNPINNED}",
                      input_size=(3, side, side), interpolation=interpolation, crop_pct=crop_pct,
                      pretrained_tag=tag)  # fmt: skip


for _entry in _TIMM_ENTRIES:
    register(_timm_entry(_entry))

# Salman et al. (2020), L-inf eps = 4/255 ResNet-50, as published by its authors on the Hub. The file is a
# checkpoint of the MadryLab ``robustness`` library (read with weights_only=True): ``model`` holds the classifier
# under ``module.model.``, a copy for the attacker under ``module.attacker.model.`` and the input normalizer's
# buffers; only ``module.model.`` is kept. The network is torchvision's ResNet-50 (same keys as timm's
# ``resnet50``). Preprocessing from the robustness library's ImageNet evaluation transform: resize 256, center
# crop 224 (crop 0.875, bilinear), ImageNet mean/std applied inside the model.
register(
    TargetSpec(
        name="imagenet-resnet50-linf4",
        family="adversarially-trained",
        architecture="timm:resnet50",
        num_classes=1000,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        source=HubWeights(
            "madrylab/robust-imagenet-models",
            "resnet50_linf_eps4.0.ckpt",
            format="torch",
            state_key="model",
            strip_prefix="module.model.",
            drop_unprefixed=True,
        ),
        license="MIT",
        citation=(
            "Salman, Ilyas, Engstrom, Kapoor, Madry. Do Adversarially Robust ImageNet Models Transfer Better? "
            "NeurIPS 2020. https://huggingface.co/madrylab/robust-imagenet-models"
        ),
        notes=(
            "PGD adversarial training, L-inf eps 4/255; published clean top-1 63.86% (model card). The same model "
            f"is RobustBench's ImageNet L-inf entry Salman2020Do_R50. {UNPINNED}"
        ),
        input_size=(3, 224, 224),
        interpolation="bilinear",
        crop_pct=0.875,
    )
)

IMAGENET_TARGETS: tuple[str, ...] = (*(e[0] for e in _TIMM_ENTRIES), "imagenet-resnet50-linf4")
