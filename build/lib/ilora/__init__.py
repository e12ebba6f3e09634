"""iLoRA: instance-wise LoRA for LLM-based sequential recommendation."""
