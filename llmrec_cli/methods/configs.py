"""Schemas of the methods (light: no torch), one dataclass per `conf/method/*.yaml`."""
from __future__ import annotations

from dataclasses import dataclass

from llmrec_cli.config.schema import MethodConfig


@dataclass
class BaselineConfig(MethodConfig):
    """A pure CRM run (`quadrant=baseline crm=pop|bpr|sasrec`): the method is the CRM named by `crm=`."""


SCHEMAS = {"baseline": BaselineConfig}
