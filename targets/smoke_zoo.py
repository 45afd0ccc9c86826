"""Targets of the offline smoke protocol, trained by ``transferbench demo`` (bench/demo.py) on digits."""

from targets.zoo import LocalWeights, TargetSpec, register

DIGITS_MEAN = (0.5,)
DIGITS_STD = (0.5,)

SMOKE_TARGETS = {
    # name: (architecture, arch_kwargs, training seed)
    "smoke-cnn-a": ("small_cnn", {"width": 16}, 101),
    "smoke-cnn-b": ("small_cnn", {"width": 24}, 102),
    "smoke-mlp": ("mlp", {"hidden": 128}, 103),
}

for _name, (_arch, _kwargs, _seed) in SMOKE_TARGETS.items():
    register(
        TargetSpec(
            name=_name,
            family="smoke",
            architecture=_arch,
            num_classes=10,
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            source=LocalWeights(f"demo/targets/{_name}.safetensors"),
            arch_kwargs=dict(_kwargs),
            notes=f"trained by the smoke recipe with seed {_seed}",
        )
    )
