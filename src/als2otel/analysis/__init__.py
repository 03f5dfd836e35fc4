"""From an entry and its proxy to calls: the analyzer chain and its analyzers."""

from .chain import Analyzer, AnalyzerChain, Resolution, direction_of
from .mx_mesh import MxMeshAnalyzer
from .peers import PeerDecoder, PeerError
from .proxy import ProxyAnalyzer

__all__ = [
    "Analyzer",
    "AnalyzerChain",
    "MxMeshAnalyzer",
    "PeerDecoder",
    "PeerError",
    "ProxyAnalyzer",
    "Resolution",
    "direction_of",
]
