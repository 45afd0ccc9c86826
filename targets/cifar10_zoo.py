"""CIFAR-10 target zoo. External, independently trained models come first; the project's own
multi-family targets (trained by a fixed recipe) are added with the next protocol version."""

from targets.zoo import TargetSpec, UrlWeights, register

AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{}"
AKAMASTER_CITATION = (
    "Yerlan Idelbayev. Proper ResNet implementation for CIFAR10/CIFAR100 in PyTorch. "
    "https://github.com/akamaster/pytorch_resnet_cifar10 (2018). Architecture: He et al., CVPR 2016."
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Content hash (bench.data.ImageSet.content_sha256) of the CIFAR-10 test split re-encoded as JPEG q75
# (all 10,000 images, class-sorted order); measured accuracies on it are pinned below. The canonical
# split's hash and accuracies are pinned once measured on a machine with Hub access.
CIFAR10_TEST_JPEG75_SHA256 = "6f8fd2bdc6fff7de520572cfc9097da321a9ee0fae5b076d8da701b86afd1f77"

# sha256 of the published files; published accuracy on canonical CIFAR-10 in the notes; measured
# accuracy on the JPEG copy (2026-11-23, CPU, fp32, `transferbench targets verify`).
for depth, sha, acc, jpeg_acc in (
    (20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.73, 0.8103),
    (32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.63, 0.8256),
    (44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.10, 0.8267),
    (56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.39, 0.8320),
):
    filename = f"resnet{depth}-{sha[:8]}.th"
    register(
        TargetSpec(
            name=f"akamaster-resnet{depth}",
            family="external",
            architecture=f"cifar_resnet{depth}",
            num_classes=10,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            source=UrlWeights(AKAMASTER_URL.format(filename), filename, sha, "state_dict", "module."),
            expected_accuracy=((CIFAR10_TEST_JPEG75_SHA256, jpeg_acc),),
            license="BSD-2-Clause",
            citation=AKAMASTER_CITATION,
            notes=f"published top-1 {acc}% on canonical CIFAR-10",
        )
    )
