"""`danlu explain`: integrated-gradients attributions, attention of every layer and head, attention rollout,
written as one self-contained HTML page (and JSON) per text, or a summary page over a data split."""
