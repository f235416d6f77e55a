"""batchlab inside other training frameworks. `batchlab.integrations.lightning.BatchlabCallback`
attaches batchlab's probes to any Lightning training (extra: `pip install 'batchlab[lightning]'`).
For a plain PyTorch loop use `batchlab.probes.Monitor`. See docs/integrations.md.
"""
