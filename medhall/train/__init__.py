"""LoRA fine-tuning of VLMs on a built dataset (SFT) and preference tuning (DPO).

One module per concern: :mod:`~medhall.train.config` (the run's settings), :mod:`~medhall.train.data`
(examples from the store or a file), :mod:`~medhall.train.encode` (chat template, assistant-only
labels, padding), :mod:`~medhall.train.model` (base, LoRA, metadata, merge),
:mod:`~medhall.train.dpo` (preference pairs and the DPO loss) and :mod:`~medhall.train.trainer`
(the run on transformers' Trainer). torch, transformers and peft are imported inside functions.
"""
