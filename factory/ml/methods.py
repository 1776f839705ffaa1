"""The engine's training methods, for a model family to offer: each method's train-stage build
function and its parameters model, found by the method's name.

A family that trains with the engine's LoRA trainers hands `trainer`, `params_model` and
`check` its own name and object; the trainers load the base through the family (`family.load`).
Nothing here imports torch: the trainers' modules import it inside their functions.
"""

from __future__ import annotations

from typing import Any, Callable

from factory.errors import FactoryError

METHODS = ("sft-lora", "dpo-lora")


def check(family: str, method: str) -> None:
    """FactoryError naming `train.method` and the methods there are, for a method the engine has not."""
    if method not in METHODS:
        raise FactoryError(f"train.method: the {family} family has no method {method!r}; its methods: {', '.join(METHODS)}")


def trainer(family: Any, method: str) -> Callable[[Any], None]:
    """The train-stage build function of `method`, loading the base through `family`."""
    check(family.name, method)
    if method == "dpo-lora":
        from factory.ml.dpo import trainer_for as dpo_trainer

        return dpo_trainer(family)
    from factory.ml.sft import trainer_for

    return trainer_for(family)


def params_model(family: str, method: str) -> Any:
    """The pydantic model of a method's settings (checked at plan time)."""
    check(family, method)
    if method == "dpo-lora":
        from factory.ml.dpo import DPOParams

        return DPOParams
    from factory.ml.sft import SFTParams

    return SFTParams


def thread_setting(device: str) -> dict[str, Any]:
    """An explicit CPU thread count, so the train key names it: another count gives other bytes."""
    from factory.ml.threads import default_threads

    n = default_threads(device)
    return {} if n is None else {"threads": n}
