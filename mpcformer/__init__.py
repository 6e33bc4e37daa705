"""mpcformer."""
