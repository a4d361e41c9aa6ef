"""The user's data in: import (CSV / Parquet / JSON Lines -> RecBole atomic files + a card), the
columnar atomic-file reader, the binary cache, MovieLens and synthetic datasets.

Imports nothing from engine/ (engine reads prepared data through this package).
"""
