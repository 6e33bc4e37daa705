"""AMP: a heterogeneity-aware planner for data/tensor/pipeline-parallel training (Li et al., NeurIPS 2022).

    from amp import profiles
    from amp.search import search
    from amp.specs import load_setup

    setup = load_setup("het_cluster")            # or a YAML file: model, nodes, links, global batch
    result = search(setup, profiles.released(setup.model), mode="improved")
    print(result.best.strategy, result.best.total_s)

Modules: `specs` (models, GPUs, nodes, clusters, strategies), `profiles` (published, FLOP-estimated or
measured per-layer times), `profile` (`python -m amp.profile`: profile your own model here), `cost_model`
(`released` and `improved` modes), `memory`, `partition` (the dynamic program), `search`, `baselines` (two
heuristics), `trials` (the released measured trials, correlations, the leave-one-setup-out fit),
`comparison` (AMP against the heuristics by measured times), `study` (one paper setup end to end), `claims`
(the paper's claims decided from the tables), `validate` (runs a strategy for real on torch.distributed and
compares), `bench` (`python -m amp.bench`: search times).
"""
