"""ImageNet-1k target zoo (used by the ImageNet and ImageNette protocols, the latter through ``RestrictLogits``).

Every timm entry names its weights with an explicit tag (``resnet50.tv_in1k``, never a bare ``resnet50``: the
default tag of an architecture changes between timm releases), and takes its preprocessing (mean/std, native
input size, interpolation, crop fraction) and license from timm's pretrained config of that tag at import time,
so no number here is typed by hand. The choice follows the transfer-attack literature: the torchvision CNNs,
the TF-slim Inception family with its adversarially trained versions, three vision transformers, and one
L-inf adversarially trained ResNet-50.

Not pinned yet: the Hub revisions and sha256 of these files were not measured where the entries were written
(no network). ``TargetSpec.pinned`` is False for each of them, ``unpinned_targets()`` lists them, and a protocol
using them must stay provisional until ``revision``/``sha256`` are filled in from
``transferbench targets fetch`` on a machine with Hub access.
"""

from __future__ import annotations

from targets.zoo import Family, HubWeights, TargetSpec, register, timm_target

UNPINNED = "Hub revision and sha256 not measured yet (no network where the entry was written): not pinned."

RESNET_CITATION = "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016."
TORCHVISION = "Weights: torchvision (TorchVision maintainers, https://github.com/pytorch/vision), ported by timm."
INCEPTION_V3_CITATION = (
    "Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. Rethinking the Inception Architecture for Computer Vision. CVPR 2016."
)

# name, timm weights, family, citation, notes
_TIMM_ENTRIES: tuple[tuple[str, str, Family, str, str], ...] = (
    ("imagenet-resnet50", "resnet50.tv_in1k", "cnn", f"{RESNET_CITATION} {TORCHVISION}",
     "torchvision IMAGENET1K_V1, published top-1 76.13%."),
    ("imagenet-vgg16", "vgg16.tv_in1k", "cnn",
     "Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image Recognition. ICLR 2015. "
     f"{TORCHVISION}", "torchvision IMAGENET1K_V1 (no batch norm), published top-1 71.59%."),
    ("imagenet-densenet121", "densenet121.tv_in1k", "cnn",
     "Huang, Liu, van der Maaten, Weinberger. Densely Connected Convolutional Networks. CVPR 2017. "
     f"{TORCHVISION}", "torchvision IMAGENET1K_V1, published top-1 74.43%."),
    ("imagenet-mobilenetv2", "mobilenetv2_100.ra_in1k", "cnn",
     "Sandler, Howard, Zhu, Zhmoginov, Chen. MobileNetV2: Inverted Residuals and Linear Bottlenecks. CVPR 2018. "
     "Weights: trained by R. Wightman (timm, RandAugment recipe).", "width 1.0; timm's own training run."),
    ("imagenet-inception-v3", "inception_v3.tf_in1k", "cnn",
     f"{INCEPTION_V3_CITATION} Weights: TF-slim release, ported by timm.",
     "The TF-slim weights, the normally trained twin of imagenet-inception-v3-adv."),
    ("imagenet-xception", "legacy_xception.tf_in1k", "cnn",
     "Chollet. Xception: Deep Learning with Depthwise Separable Convolutions. CVPR 2017. "
     "Weights: the Keras release, ported by R. Cadene (pretrainedmodels) and re-released by timm.",
     "Chollet's original Xception; timm hosts it as a GitHub release file, not on the Hub (sha256 not pinned)."),
    ("imagenet-vit-b16", "vit_base_patch16_224.augreg_in21k_ft_in1k", "vit",
     "Dosovitskiy et al. An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale. ICLR 2021. "
     "Weights: Steiner et al. How to train your ViT? Data, Augmentation, and Regularization in Vision "
     "Transformers. TMLR 2022.", "ImageNet-21k pre-training, ImageNet-1k fine-tuning (AugReg)."),
    ("imagenet-deit-b", "deit_base_patch16_224.fb_in1k", "vit",
     "Touvron, Cord, Douze, Massa, Sablayrolles, Jegou. Training data-efficient image transformers & distillation "
     "through attention. ICML 2021.", "DeiT-B without the distillation token, trained on ImageNet-1k only."),
    ("imagenet-swin-b", "swin_base_patch4_window7_224.ms_in22k_ft_in1k", "vit",
     "Liu et al. Swin Transformer: Hierarchical Vision Transformer using Shifted Windows. ICCV 2021.",
     "Swin-B, window 7, ImageNet-22k pre-training, ImageNet-1k fine-tuning."),
    ("imagenet-inception-v3-adv", "inception_v3.tf_adv_in1k", "adversarially-trained",
     f"Kurakin, Goodfellow, Bengio. Adversarial Machine Learning at Scale. ICLR 2017. {INCEPTION_V3_CITATION}",
     "Adversarially trained (single-step attacks) Inception-v3, the 'adv_inception_v3' TF-slim release."),
    ("imagenet-incres-v2-ens-adv", "inception_resnet_v2.tf_ens_adv_in1k", "adversarially-trained",
     "Tramer, Kurakin, Papernot, Goodfellow, Boneh, McDaniel. Ensemble Adversarial Training: Attacks and "
     "Defenses. ICLR 2018. Architecture: Szegedy, Ioffe, Vanhoucke, Alemi. Inception-v4, Inception-ResNet and the "
     "Impact of Residual Connections on Learning. AAAI 2017.",
     "'ens_adv_inception_resnet_v2': trained on adversarial examples transferred from an ensemble."),
)  # fmt: skip

for _name, _timm_name, _family, _citation, _notes in _TIMM_ENTRIES:
    register(timm_target(_name, _timm_name, family=_family, citation=_citation, notes=f"{_notes} {UNPINNED}"))

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
