"""MovieLens 100K and 1M loaders, reading the original GroupLens files (Latin-1 titles)."""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec_cli.data.raw import RawData
from llmrec_cli.data.sources.base import DatasetConfig, hash_files, locate
from llmrec_cli.errors import DataError
from llmrec_cli.registry import register_dataset

log = logging.getLogger(__name__)

# Official archives; sha256 as listed in tensorflow/datasets url_checksums/movielens.txt.
ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML_100K_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
ML_1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML_1M_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"

# u.genre order, used when u.genre is absent.
ML_100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                  "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                  "Thriller", "War", "Western")

# "Title (1995)" with an optional trailing marker such as "(V)".
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*(?:\([^()]*\)\s*)?$")
_ML1M_FALLBACKS = ("ratings.parquet", "ratings_implicit.dat.gz")


@dataclass
class MovieLensConfig(DatasetConfig):
    """Schema for `ml-100k` and `ml-1m`; `url`/`sha256` default to the official GroupLens archives."""


def split_title(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Split "Toy Story (1995)" into ("Toy Story", 1995); the year is Int64, NA when absent."""
    raw = raw.fillna("").astype(str).str.strip()
    parts = raw.str.extract(_TITLE_YEAR)
    title = parts["title"].where(parts["title"].notna(), raw).astype(str)
    year = pd.to_numeric(parts["year"], errors="coerce").astype("Int64")
    return title, year


def _interactions(user, item, timestamp, rating) -> pd.DataFrame:
    """Build the RawData interactions frame with the contract's dtypes."""
    return pd.DataFrame({
        "user": pd.Series(user).astype(str).to_numpy(),
        "item": pd.Series(item).astype(str).to_numpy(),
        "timestamp": np.asarray(timestamp, dtype="int64"),
        "rating": np.asarray(rating, dtype="float64"),
    }).astype({"user": str, "item": str})


@register_dataset("ml-100k", schema=MovieLensConfig, description="MovieLens 100K (u.data, u.item)")
def load_ml_100k(cfg) -> RawData:
    """Read `u.data` (tab-separated, original order) and `u.item` (Latin-1, 19 genre flags)."""
    folder = locate(cfg, "ml-100k", ["u.data", "u.item"], ML_100K_URL, ML_100K_SHA256)
    data = pd.read_csv(folder / "u.data", sep="\t", header=None, names=["user", "item", "rating", "timestamp"],
                       dtype={"user": str, "item": str, "rating": "float64", "timestamp": "int64"})
    genres, read = list(ML_100K_GENRES), [folder / "u.data", folder / "u.item"]
    if (folder / "u.genre").is_file():
        lines = (folder / "u.genre").read_text(encoding="latin-1").splitlines()
        genres = [line.rsplit("|", 1)[0] for line in lines if line.strip()]
        read.append(folder / "u.genre")
    meta = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1", dtype=str,
                       quoting=csv.QUOTE_NONE, keep_default_na=False)
    if meta.shape[1] != 5 + len(genres):
        raise DataError(f"{folder / 'u.item'} has {meta.shape[1]} fields per line, expected {5 + len(genres)}: "
                        "point dataset.path at the original ml-100k folder")
    flags = meta.iloc[:, 5:].to_numpy() == "1"
    title, year = split_title(meta[1])
    items = pd.DataFrame({
        "item": meta[0].astype(str),
        "title": title,
        "year": year,
        "genres": ["|".join(g for g, on in zip(genres, row, strict=True) if on) for row in flags],
    })
    inter = _interactions(data["user"], data["item"], data["timestamp"], data["rating"])
    return RawData(inter, items.astype({"item": str, "title": str, "genres": str}), hash_files(read))


@register_dataset("ml-1m", schema=MovieLensConfig, description="MovieLens 1M (ratings.dat, movies.dat)")
def load_ml_1m(cfg) -> RawData:
    """Read `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and `movies.dat` (Latin-1).

    Without ratings.dat, falls back to `ratings.parquet` / `ratings_implicit.dat.gz` (user, movie pairs only):
    rating NaN and timestamp = position in the user's rows, so a chronological split is by file order.
    """
    folder = locate(cfg, "ml-1m", ["movies.dat", ("ratings.dat", *_ML1M_FALLBACKS)], ML_1M_URL, ML_1M_SHA256)
    ratings = folder / "ratings.dat"
    has_time = ratings.is_file()
    if has_time:
        # Splitting on ":" leaves empty fields between the "::" pairs; the C parser is fast on 1M rows.
        data = pd.read_csv(ratings, sep=":", header=None, usecols=[0, 2, 4, 6], dtype=str)
        data.columns = ["user", "item", "rating", "timestamp"]
        inter = _interactions(data["user"], data["item"], data["timestamp"].astype("int64"),
                              data["rating"].astype("float64"))
    else:
        ratings = next(folder / n for n in _ML1M_FALLBACKS if (folder / n).is_file())
        inter = _implicit_pairs(ratings)
    movies = folder / "movies.dat"
    rows = [line.split("::", 2) for line in movies.read_text(encoding="latin-1").splitlines() if line.strip()]
    if any(len(r) != 3 for r in rows):
        raise DataError(f"{movies} is not in MovieID::Title::Genres format: point dataset.path at the original ml-1m")
    meta = pd.DataFrame(rows, columns=["item", "raw_title", "genres"])
    title, year = split_title(meta["raw_title"])
    items = pd.DataFrame({"item": meta["item"].str.strip(), "title": title, "year": year, "genres": meta["genres"]})
    return RawData(inter, items.astype({"item": str, "title": str, "genres": str}), hash_files([ratings, movies]),
                   has_time=has_time)


def _implicit_pairs(path: Path) -> pd.DataFrame:
    """Read (user, movie) pairs without ratings or timestamps; timestamps become file positions per user."""
    log.warning("ml-1m: %s has no ratings or timestamps (ratings.dat is absent): rating is NaN and the "
                "chronological split is by file order, not time", path)
    if path.suffix == ".parquet":
        data = pd.read_parquet(path)
        data = data.rename(columns={data.columns[0]: "user", data.columns[1]: "item"})
    else:
        data = pd.read_csv(path, sep=":", header=None, usecols=[0, 2], names=["user", "e", "item"], dtype=str,
                           compression="gzip" if path.suffix == ".gz" else None)
    user = data["user"].astype(str).str.strip()
    position = user.groupby(user, sort=False).cumcount()
    return _interactions(user, data["item"].astype(str).str.strip(), position, np.full(len(data), np.nan))
