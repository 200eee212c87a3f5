"""Robustness: black-box word- and character-level attacks (`danlu attack`) and augmented or adversarial
fine-tuning (`danlu finetune --augment`)."""
