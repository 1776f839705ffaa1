"""Model-side machinery any family can use: prompt encoding, batched generation, the SFT-LoRA trainer.

Every module here imports torch, transformers and peft inside functions, so that
importing `factory.ml` stays cheap.
"""
