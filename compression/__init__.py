"""Activation compression for tensor- and pipeline-parallel training (the MLSys'24 study).

    from compression.compressors import build, CompressorSpec
    from compression import parallel

    ae = build(CompressorSpec(name="autoencoder", d=50), hidden=384)   # or topk, randk, quantize, powersgd
    par = parallel.setup(tp=2, pp=1)            # inside a torch.distributed job (torchrun, SLURM, run_processes)
    y = parallel.reduce_from_tp(partial_sum, par.tp_comm, ae)          # a Megatron all-reduce through `ae`

Modules: `compressors` (one interface: encode, decode, bytes on the wire, trainable or not), `parallel`
(Megatron-style column/row tensor parallelism and GPipe pipeline stages whose messages go through a
compressor, forward and optionally backward, from a configurable layer on), `models` (a BERT encoder built
from those layers, loading all-MiniLM-L6-v2 or BERT weights), `train` (fine-tuning with exact resume), `bench`
(iteration time and bytes per compressor over emulated links), `cost_model` (fitted from micro-benchmarks:
predicted speedup and break-even bandwidth per compressor).
"""
