"""Image classification: a backbone with a linear head; predict, fine-tune, evaluate, visualise."""
