"""Typed configuration: schemas registered in Hydra's ConfigStore, composition and validation."""
