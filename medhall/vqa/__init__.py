"""Zero-shot medical VQA (the paper's Table 3): benchmarks, metrics, runners, the resumable
pipeline and its report. One module per concern; import the submodules directly:

- :mod:`medhall.vqa.data`: the item model and the reading the loaders share;
- :mod:`medhall.vqa.loaders`: one loader per benchmark, in the form its authors publish it;
- :mod:`medhall.vqa.metrics`: LLaVA-Med's metrics, reproduced exactly, and a strict variant;
- :mod:`medhall.vqa.config`: the run's configuration, model and item keys;
- :mod:`medhall.vqa.runners`: the models' runners and the pool that loads each once;
- :mod:`medhall.vqa.pipeline`: load, plan, answer shards, assemble and score (on
  :mod:`medhall.shards`);
- :mod:`medhall.vqa.report`: Table 3 as Markdown, CSV and PNG, and the run's report files.
"""
