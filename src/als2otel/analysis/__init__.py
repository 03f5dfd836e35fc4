"""From an entry and its proxy to calls: the analyzer chain and its analyzers."""

from .chain import Analyzer, AnalyzerChain, Resolution, direction_of
from .proxy import ProxyAnalyzer

__all__ = ["Analyzer", "AnalyzerChain", "ProxyAnalyzer", "Resolution", "direction_of"]
