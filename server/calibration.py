"""int8 calibration ranges, fixed per model and stored next to the data.

The ranges come from the model's vectors of a fixed, built-in sample of texts (below). The
sample's vectors are computed once per model fingerprint and stored in
``data_dir/calibration/<fingerprint>.npy``; every later start reads them back, so the ranges
never depend on a batch, a restart or the hardware's rounding. Ranges for truncated dims or
unnormalized output are derived from the same stored sample, shaped the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from server.vectors import postprocess

log = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "A man is eating food.",
    "The new movie is awesome.",
    "How do I reset my password?",
    "Vitamin D deficiency is associated with an increased risk of fractures.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "What is the capital of Australia?",
    "She played the violin at the wedding ceremony.",
    "Install the package with pip and restart the kernel.",
    "The patient presented with fever, cough and shortness of breath.",
    "Quantum entanglement links the states of two particles regardless of distance.",
    "Our quarterly revenue grew by twelve percent year over year.",
    "The cat sat on the warm windowsill all afternoon.",
    "Mutations in the BRCA1 gene increase the lifetime risk of breast cancer.",
    "Preheat the oven to 200 degrees and bake for twenty minutes.",
    "The treaty was signed in 1648, ending thirty years of war.",
    "Which programming language is best for data analysis?",
    "Heavy rain caused flooding in several coastal towns.",
    "The defendant pleaded not guilty to all charges.",
    "Neural networks learn representations by gradient descent.",
    "I lost my keys somewhere between the station and the office.",
    "The enzyme catalyzes the hydrolysis of ATP to ADP.",
    "Tickets for the concert sold out within minutes.",
    "Climate change is accelerating the melting of polar ice sheets.",
    "Please send the signed contract by Friday.",
    "The football match ended in a goalless draw.",
    "Antibiotics are ineffective against viral infections.",
    "Our hotel room had a beautiful view of the mountains.",
    "The algorithm runs in logarithmic time on sorted input.",
    "Children learn languages more easily than adults.",
    "The museum exhibits paintings from the Renaissance period.",
    "Exercise improves cardiovascular health and mood.",
    "How many calories are in a banana?",
    "The server returned an error when the disk was full.",
    "T cells recognize antigens presented by MHC molecules.",
    "He apologized for arriving late to the meeting.",
    "The river flows north through the valley into the lake.",
    "Electric cars are becoming cheaper to manufacture.",
    "The committee postponed its decision until next month.",
    "Insulin resistance is a hallmark of type 2 diabetes.",
    "My flight was delayed by three hours because of fog.",
    "The novel tells the story of a family across four generations.",
    "Smoking is the leading cause of preventable death worldwide.",
    "Add two cups of flour and stir until smooth.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Where can I find the nearest pharmacy?",
    "The company announced layoffs affecting five hundred employees.",
    "Sleep deprivation impairs memory consolidation.",
    "Dogs were domesticated from wolves thousands of years ago.",
    "The bridge was closed for repairs over the weekend.",
    "Low-dose aspirin reduces the risk of heart attack in some patients.",
    "The orchestra performed Beethoven's ninth symphony.",
    "Users report that the app crashes on startup.",
    "Coral reefs are threatened by ocean acidification.",
    "The election results will be announced tomorrow morning.",
    "This recipe is vegan and gluten free.",
    "Macrophages engulf and digest cellular debris and pathogens.",
    "The hiking trail offers stunning views of the glacier.",
    "Inflation reduces the purchasing power of money.",
    "I prefer tea over coffee in the morning.",
    "The protein folds into a stable three-dimensional structure.",
    "Traffic was heavy on the highway during rush hour.",
    "The library extended its opening hours for exam season.",
    "Gene expression is regulated by transcription factors.",
)


def sample_path(data_dir: Path, fingerprint: str) -> Path:
    return data_dir / "calibration" / (fingerprint.replace("/", "_").replace("@", "-") + ".npy")


class Calibration:
    """Per-dimension int8 ranges derived from a stored sample of the model's vectors."""

    def __init__(self, sample: np.ndarray) -> None:
        self.sample = np.asarray(sample, dtype=np.float32)
        self._ranges: dict[tuple[bool, int], tuple[np.ndarray, np.ndarray]] = {}

    def ranges(self, normalize: bool, truncate_dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension (min, max), each (truncate_dim,) float32, of the sample shaped alike."""
        key = (normalize, truncate_dim)
        if key not in self._ranges:
            shaped = postprocess(self.sample, normalize, truncate_dim)
            self._ranges[key] = (shaped.min(axis=0), shaped.max(axis=0))
        return self._ranges[key]

    @classmethod
    async def load_or_create(
        cls, path: Path, dimension: int, encode: Callable[[list[str]], Awaitable[np.ndarray]]
    ) -> Calibration:
        """The stored sample at ``path``; computed with ``encode`` and stored when missing or
        unreadable (a damaged file is a cache miss, not a failure)."""
        stored = await asyncio.to_thread(_load, path, dimension)
        if stored is not None:
            return cls(stored)
        sample = np.asarray(await encode(list(SAMPLE_TEXTS)), dtype=np.float32)
        await asyncio.to_thread(_save, path, sample)
        log.info("stored int8 calibration sample in %s", path)
        return cls(sample)


def _load(path: Path, dimension: int) -> np.ndarray | None:
    try:
        sample = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("int8 calibration sample %s is unreadable (%s); computing it again", path, exc)
        return None
    if sample.shape != (len(SAMPLE_TEXTS), dimension) or not np.isfinite(sample).all():
        log.warning("int8 calibration sample %s has shape %s; computing it again", path, sample.shape)
        return None
    return np.asarray(sample, dtype=np.float32)


def _save(path: Path, sample: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, sample)
    tmp.replace(path)
