"""A model family `toy` for eval tests: its base directory is a transformers checkpoint (as
factory.ml.toymodels writes one); adapters are not applied (the tests' adapters are placeholders).

A plugin module, so a fresh process (factory.ml.fresh) can load the family by name as well.
"""

from factory.hookspecs import hookimpl
from factory.interfaces import LoadedModel

__version__ = "0"


class ToyFamily:
    name = "toy"
    version = "0"
    loads: list = []  # (base_dir, adapter_dir) of every load in this process

    def load(self, base_dir, adapter_dir, settings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.loads.append((base_dir, adapter_dir))
        tok = AutoTokenizer.from_pretrained(str(base_dir))
        return LoadedModel(model=AutoModelForCausalLM.from_pretrained(str(base_dir)), tokenizer=tok,
                           format_prompt=lambda p: f"### Prompt:\n{p}\n### Answer:\n",
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


@hookimpl
def register_model_families(register):
    register(ToyFamily())
