"""The serving runtime: engine construction, the scoring service and the inference server launcher.

Nothing here imports ``mii_azure.targets`` or azure; importing most submodules imports torch.
"""
