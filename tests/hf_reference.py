"""Random-weight transformers reference models, built offline and saved as HF checkpoints."""

from __future__ import annotations

from collections.abc import Callable


def save_random_models(configs: dict[str, Callable], randomize: Callable, tmp_path_factory) -> dict:
    """name -> (checkpoint dir, transformers model): float32, `randomize(model, seed)` per model."""
    import torch
    import transformers

    models = {}
    for seed, (name, make_config) in enumerate(configs.items()):
        model = transformers.AutoModelForCausalLM.from_config(make_config(), dtype=torch.float32)
        randomize(model, seed)
        model.eval()
        model_dir = tmp_path_factory.mktemp(name)
        model.save_pretrained(model_dir)
        models[name] = (model_dir, model)
    return models
