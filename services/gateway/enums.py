"""The gateway's enums, built from the protobuf descriptors: ``schemas/*.proto`` stays the one definition.

Members are the protobuf value names (what the sink stores and the API returns), minus the ``*_UNSPECIFIED``
placeholder. As filters they parse case-insensitively, blanks trimmed, and may drop the enum-name prefix the
protobuf style puts on values: ``a`` means ``TIER_A``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, cast

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from schemas import common_pb2, signal_pb2


class ProtoName(enum.StrEnum):
    """An enum of protobuf value names; see the module docstring for how a filter value is parsed."""

    @classmethod
    def _missing_(cls, value: object) -> ProtoName | None:
        if not isinstance(value, str):
            return None
        key = value.strip().upper()
        prefix = f"{cls.__name__.upper()}_"
        for member in cls:
            if key in (member.value, member.value.removeprefix(prefix)):
                return member
        return None


def proto_names(wrapper: EnumTypeWrapper) -> list[str]:
    """A protobuf enum's value names from its descriptor, in declaration order, minus ``*_UNSPECIFIED``."""
    return [v.name for v in wrapper.DESCRIPTOR.values if not v.name.endswith("_UNSPECIFIED")]


def proto_enum(name: str, wrapper: EnumTypeWrapper) -> type[ProtoName]:
    members = {n: n for n in proto_names(wrapper)}
    created: object = ProtoName(name, members)  # type: ignore[call-arg]  # Enum's functional API: mypy cannot follow
    return cast(type[ProtoName], created)


if TYPE_CHECKING:  # mypy sees the members' common type; FastAPI and pydantic see the real enums below
    Decision = ProtoName
    Tier = ProtoName
    Venue = ProtoName
else:
    Decision = proto_enum("Decision", signal_pb2.Decision)  # LONG, SHORT, WAIT
    Tier = proto_enum("Tier", signal_pb2.Tier)  # TIER_NONE, TIER_A, TIER_B
    Venue = proto_enum("Venue", common_pb2.Venue)  # BINANCE_SPOT, BINANCE_USDM, SIMULATOR


def describe(enum_type: type[ProtoName]) -> str:
    """The OpenAPI description of a response field: stored values are returned as stored, not validated."""
    names = ", ".join(m.value for m in enum_type)
    return f"The protobuf `{enum_type.__name__}` name: {names}. A faulty producer's value is returned as stored."
