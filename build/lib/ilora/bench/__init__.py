"""`ilora-bench`: cost of the MoE-LoRA layer, a training step, evaluation and memory, each in its own module.

`timing` (interleaved medians, machine facts), `layer`, `peak` (matmul peak), `step` (training step vs peft,
FLOP utilisation), `evaluation` (ranking vs prefill, generation), `footprint` (peak RSS, checkpoint size),
`report` (bench.json + markdown). Every ratio is timed inside one process with the two sides interleaved
repeat by repeat, so load from other processes hits both alike.
"""
