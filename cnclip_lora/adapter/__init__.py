"""Everything about an adapter folder: its file names, the run record, the base it belongs to,
the split it was trained on, its validation, its model card and its Hub round trip."""

#: Files of a PEFT adapter folder, spelled once.
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
