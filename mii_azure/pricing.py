"""Hourly prices of Azure VM sizes: the catalog's, a user's price sheet, a region, a discount.

The SKU catalog (``data/azure_gpu_skus.csv``) holds indicative Linux pay-as-you-go prices for
eastus only. Prices for another region, or negotiated ones, come from a price sheet the user
gives: a CSV file with a header row ``instance_type,usd_per_hour[,region]`` or a JSON file (a list
of such objects, ``{"prices": [...]}``, or ``{"<instance_type>": usd_per_hour}``). A row without a
region applies in any region. A discount (reserved instances, a savings plan) is a fraction taken
off every price. Nothing here invents a price: a SKU without one is reported as unpriced.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .skus import CATALOG_AS_OF

__all__ = ["PriceQuote", "PriceSheet", "PriceSheetRow", "Pricing", "CATALOG_PRICE_REGION"]

#: The region of the catalog's prices (its column ``usd_per_hour_eastus``).
CATALOG_PRICE_REGION = "eastus"
CATALOG_PRICE_SOURCE = f"catalog: Azure Retail Prices API, Linux pay-as-you-go, {CATALOG_PRICE_REGION}, as of {CATALOG_AS_OF}"
SHEET_FORMAT = "CSV with header instance_type,usd_per_hour[,region], or JSON [{\"instance_type\": ..., \"usd_per_hour\": ...}]"


def normalize_region(region: str) -> str:
    """Azure's region name: ``East US`` and ``eastus`` are the same."""
    return region.replace(" ", "").replace("-", "").lower()


def normalize_instance(name: str) -> str:
    """A VM size name without case and without the ``Standard_`` prefix."""
    lowered = name.strip().lower()
    return lowered[len("standard_") :] if lowered.startswith("standard_") else lowered


class PriceSheetRow(BaseModel):
    """One price of a price sheet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str = Field(min_length=1)
    usd_per_hour: float = Field(gt=0)
    region: Optional[str] = None


class PriceSheet(BaseModel):
    """A user's prices, and where they were read from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: tuple[PriceSheetRow, ...]
    source: str = "price sheet given"

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "PriceSheet":
        """Read a CSV or JSON price sheet (see the module's docstring for the formats)."""
        file = Path(path).expanduser()
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"Cannot read the price sheet {str(file)!r} ({exc}); check the path.", path=str(file)) from None
        if file.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
            return cls.from_json(text, source=str(file))
        return cls.from_csv(text, source=str(file))

    @classmethod
    def from_csv(cls, text: str, *, source: str = "price sheet given") -> "PriceSheet":
        """Parse CSV text with a header row; lines starting with ``#`` are comments."""
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        reader = csv.DictReader(io.StringIO("\n".join(lines)))
        header = [name.strip() for name in reader.fieldnames or []]
        if "instance_type" not in header or "usd_per_hour" not in header:
            raise ConfigError(
                f"The price sheet {source} has columns {header or 'none'}; it needs a header row with "
                f"instance_type and usd_per_hour (and optionally region). Expected: {SHEET_FORMAT}.",
                path=source,
            )
        rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
        return cls.from_rows(rows, source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str = "price sheet given") -> "PriceSheet":
        """Parse a JSON list of rows, ``{"prices": [...]}`` or ``{"<instance_type>": price}``."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"The price sheet {source} is not valid JSON ({exc}). Expected: {SHEET_FORMAT}.", path=source) from None
        if isinstance(data, dict) and isinstance(data.get("prices"), list):
            data = data["prices"]
        elif isinstance(data, dict):
            data = [{"instance_type": name, "usd_per_hour": price} for name, price in data.items()]
        if not isinstance(data, list):
            raise ConfigError(f"The price sheet {source} must hold a list of prices. Expected: {SHEET_FORMAT}.", path=source)
        return cls.from_rows(data, source=source)

    @classmethod
    def from_rows(cls, rows: list[Any], *, source: str = "price sheet given") -> "PriceSheet":
        """Validate rows (dicts with instance_type, usd_per_hour and optionally region)."""
        parsed = []
        for number, row in enumerate(rows, start=1):
            if isinstance(row, dict):
                row = {key: value for key, value in row.items() if value not in ("", None) or key != "region"}
            try:
                parsed.append(PriceSheetRow.model_validate(row))
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'row'}: {error['msg']}" for error in exc.errors())
                raise ConfigError(
                    f"Row {number} of the price sheet {source} is not a price ({problems}): {row!r}. "
                    f"Each row needs instance_type and a positive usd_per_hour. Expected: {SHEET_FORMAT}.",
                    path=source,
                    row=number,
                ) from None
        if not parsed:
            raise ConfigError(f"The price sheet {source} holds no prices. Expected: {SHEET_FORMAT}.", path=source)
        return cls(rows=tuple(parsed), source=source)

    def covers(self, region: str) -> bool:
        """Whether any row applies in ``region``."""
        wanted = normalize_region(region)
        return any(row.region is None or normalize_region(row.region) == wanted for row in self.rows)

    def price(self, instance_type: str, region: str) -> Optional[PriceSheetRow]:
        """The row for ``instance_type`` in ``region``; a row for that region wins over one without a region."""
        name, wanted = normalize_instance(instance_type), normalize_region(region)
        matching = [row for row in self.rows if normalize_instance(row.instance_type) == name]
        regional = [row for row in matching if row.region is not None and normalize_region(row.region) == wanted]
        anywhere = [row for row in matching if row.region is None]
        return (regional or anywhere or [None])[0]

    def regions(self) -> list[str]:
        """The regions the sheet names."""
        return sorted({row.region for row in self.rows if row.region})


class PriceQuote(BaseModel):
    """The price an estimate uses for one VM size, and where it comes from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str
    usd_per_hour: float = Field(description="The hourly price used: the list price less the discount.")
    list_usd_per_hour: float
    region: str
    source: str
    discount: float = 0.0


class Pricing(BaseModel):
    """Where prices come from: a region, an optional price sheet, an optional discount."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str = CATALOG_PRICE_REGION
    sheet: Optional[PriceSheet] = None
    discount: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction off every price (0.3 for 30%).")
    discount_label: Optional[str] = Field(None, description="What the discount is, e.g. '1-year reserved'.")

    @classmethod
    def make(
        cls,
        *,
        region: Optional[str] = None,
        prices: Union[None, str, "os.PathLike[str]", PriceSheet, dict[str, float], list[dict[str, Any]]] = None,
        discount: float = 0.0,
        discount_label: Optional[str] = None,
    ) -> "Pricing":
        """Pricing from the friendly forms: a sheet path, a sheet, a ``{name: price}`` dict or a list of rows."""
        if isinstance(prices, (str, os.PathLike)):
            sheet: Optional[PriceSheet] = PriceSheet.load(prices)
        elif isinstance(prices, dict):
            sheet = PriceSheet.from_rows([{"instance_type": k, "usd_per_hour": v} for k, v in prices.items()], source="prices given")
        elif isinstance(prices, list):
            sheet = PriceSheet.from_rows(prices, source="prices given")
        else:
            sheet = prices
        if not 0.0 <= discount < 1.0:
            raise ConfigError(
                f"discount={discount!r} must be a fraction in [0, 1): 0.3 means 30% off (a reserved instance or savings plan).",
                discount=discount,
            )
        pricing = cls(region=normalize_region(region or CATALOG_PRICE_REGION), sheet=sheet, discount=discount, discount_label=discount_label)
        pricing.check_region()
        return pricing

    def check_region(self) -> None:
        """Raise ConfigError when nothing prices this region."""
        if self.region == CATALOG_PRICE_REGION or (self.sheet is not None and self.sheet.covers(self.region)):
            return
        named = f" (it names {', '.join(self.sheet.regions())})" if self.sheet is not None and self.sheet.regions() else ""
        raise ConfigError(
            f"No prices for region {self.region!r}: the SKU catalog has {CATALOG_PRICE_REGION} pay-as-you-go prices only "
            f"(as of {CATALOG_AS_OF}), and {'the price sheet has no row for it' + named if self.sheet else 'no price sheet was given'}. "
            f"Pass a price sheet with rows for {self.region} (prices= / --prices FILE; {SHEET_FORMAT}), "
            f"or use region={CATALOG_PRICE_REGION!r}.",
            region=self.region,
        )

    def quote(self, instance_type: str, catalog_usd_per_hour: Optional[float], *, given_source: str = "") -> Union[PriceQuote, str]:
        """The price of ``instance_type``, or the reason there is none.

        ``catalog_usd_per_hour`` is the catalog's (eastus) price, or a price given with the hardware
        (``given_source`` then names it); a price sheet row for the region wins over either."""
        row = self.sheet.price(instance_type, self.region) if self.sheet is not None else None
        if row is not None:
            where = f"{self.region}" if row.region else "any region"
            return self._quote(instance_type, row.usd_per_hour, f"{self.sheet.source} ({where})")  # type: ignore[union-attr]
        if catalog_usd_per_hour is not None and (given_source or self.region == CATALOG_PRICE_REGION):
            return self._quote(instance_type, catalog_usd_per_hour, given_source or CATALOG_PRICE_SOURCE)
        if self.region != CATALOG_PRICE_REGION:
            return (
                f"no price for {instance_type} in {self.region}: the catalog prices {CATALOG_PRICE_REGION} only; "
                "add a row for it to the price sheet"
            )
        return f"the catalog has no price for {instance_type}; add a row for it to a price sheet (prices=)"

    def describe(self) -> str:
        """One line: which prices an estimate used."""
        parts = []
        if self.sheet is not None:
            parts.append(f"price sheet {self.sheet.source} for {self.region}")
        if self.region == CATALOG_PRICE_REGION:
            parts.append(("else " if parts else "") + CATALOG_PRICE_SOURCE)
        text = "; ".join(parts)
        if self.discount:
            label = f" ({self.discount_label})" if self.discount_label else ""
            text += f"; less a {self.discount:.0%} discount{label}"
        return text

    def _quote(self, instance_type: str, list_price: float, source: str) -> PriceQuote:
        return PriceQuote(
            instance_type=instance_type,
            usd_per_hour=list_price * (1 - self.discount),
            list_usd_per_hour=list_price,
            region=self.region,
            source=source,
            discount=self.discount,
        )
