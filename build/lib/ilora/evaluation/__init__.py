"""LLM evaluation: KV-shared candidate ranking and greedy generation with LLaRA's parsing.

Import from the submodules (`ilora.evaluation.ranking`, `ilora.evaluation.generation`); this package file
stays empty of imports so `import ilora.evaluation` does not load transformers.
"""
