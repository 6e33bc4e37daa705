"""Activation compression for tensor- and pipeline-parallel training (the MLSys'24 study).

    from compression.compressors import CompressorSpec
    from compression import parallel

    ae = CompressorSpec.parse({"name": "autoencoder", "d": 50}).build(hidden=384)   # or topk, randk, quantize, ...
    par = parallel.setup(tp=2, pp=1)            # inside a torch.distributed job (torchrun, SLURM, run_processes)
    y = parallel.reduce_from_tp(partial_sum, par.tp_comm, ae)          # a Megatron all-reduce through `ae`

Modules: `compressors` (one interface: encode, decode, bytes on the wire, trainable or not; `CompressorSpec`),
`parallel` (Megatron-style column/row tensor parallelism and GPipe pipeline stages whose messages go through a
compressor, forward and optionally backward, from a configurable layer on), `models` (a BERT encoder built from
those layers, loading all-MiniLM-L6-v2 or any Hugging Face BERT), `glue` (GLUE's TSV files through `datasets`),
`train` (fine-tuning with exact resume under any TP x PP layout), `bench` (iteration time and bytes per compressor
over emulated links; `python -m compression.bench codecs`), `cost_model` (predicted iteration time and break-even
bandwidth per compressor), `study` (the study's runs and tables) and `findings` (its claims decided from them).
"""
