"""Subscription files: one catalog entry (附件三) per resource, its data dictionary, source and subscribers.

Every error names the file, the line and the field, because operators write these by hand.
The row filter is structured data (column, operator, value), never SQL text: values are always
bound parameters, columns must be in the data dictionary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from hub.sftp import AGENT_ID_PATTERN
from protocol import canonical

FREQUENCIES = ("实时", "每时", "每天", "每周", "每月", "自定义")
SCOPES = ("全学段", "学前", "小学", "中学", "高中", "中职", "高校")
SUBSCRIPTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # protocol.layout ids: file names
IDENTIFIER = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
# 机构名称-数据基本信息: an institution, a hyphen, the data description; both non-blank.
RESOURCE_NAME = re.compile(r"^[^\s\-－][^\-－]*[-－][^\s\-－].*$")


class CatalogError(ValueError):
    """A subscription file that cannot be accepted; the message names file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


NonEmpty = Annotated[str, Field(min_length=1)]


class Agreement(_Strict):
    """数据共享保密协议 of an authorised share: id and validity period."""

    id: NonEmpty
    valid_from: dt.date
    valid_until: dt.date

    @model_validator(mode="after")
    def _period(self) -> Agreement:
        if self.valid_until < self.valid_from:
            raise ValueError("valid_until is before valid_from")
        return self


class Frequency(_Strict):
    """更新频度: one of the six; 自定义 (custom) carries a cron expression."""

    value: Literal["实时", "每时", "每天", "每周", "每月", "自定义"]
    cron: str | None = None

    @model_validator(mode="after")
    def _cron(self) -> Frequency:
        if self.value == "自定义":
            if not self.cron or not croniter.is_valid(self.cron):
                raise ValueError(f"自定义 (custom) needs a valid cron expression, got {self.cron!r}")
        elif self.cron is not None:
            raise ValueError(f"cron is only allowed with 自定义, not with {self.value}")
        return self


class CatalogEntry(_Strict):
    """The fields of 附件三 数据资源目录信息表 (第十五～十七条)."""

    provider: NonEmpty  # 数据提供部门
    resource_name: NonEmpty  # 资源名称
    mounted_resource_name: NonEmpty  # 挂载资源名称
    summary: NonEmpty  # 资源摘要
    data_name: NonEmpty  # 数据名称
    data_format: NonEmpty  # 数据格式
    sharing_type: Literal["unconditional", "authorised"]
    agreement: Agreement | None = None
    security_level: NonEmpty  # 数据安全等级
    update_frequency: Frequency
    provision_method: Literal["table", "file"]
    time_range: NonEmpty  # 时间范围
    topic: NonEmpty  # 所属主题库
    scope: NonEmpty  # 约束范围: one of SCOPES or a district / school

    @field_validator("resource_name", "mounted_resource_name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        if not RESOURCE_NAME.match(value):
            raise ValueError(
                f"{value!r} is not in the form 机构名称-数据基本信息 (e.g. 人事处数据-教职工科技论文信息)"
            )
        return value

    @field_validator("update_frequency", mode="before")
    @classmethod
    def _frequency_shorthand(cls, value: Any) -> Any:
        return {"value": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _agreement(self) -> CatalogEntry:
        if self.sharing_type == "authorised" and self.agreement is None:
            raise ValueError("authorised sharing needs an agreement (id, valid_from, valid_until)")
        if self.sharing_type == "unconditional" and self.agreement is not None:
            raise ValueError("unconditional sharing takes no agreement")
        return self

    def header_fields(self) -> dict[str, Any]:
        """The entry as it travels in package headers (JSON-safe)."""
        out = self.model_dump(mode="json", exclude_none=True)
        out["update_frequency"] = self.update_frequency.value
        if self.update_frequency.cron:
            out["update_cron"] = self.update_frequency.cron
        if self.agreement is not None:
            out["agreement_id"] = self.agreement.id
        return out


class Column(_Strict):
    """One row of 数据资源目录信息明细表."""

    name: Annotated[str, Field(pattern=IDENTIFIER.pattern)]  # 字段名称
    label: NonEmpty  # 数据项名称
    meaning: NonEmpty  # 业务含义
    type: NonEmpty  # 数据类型（长度）, Oracle-style as providers write it
    not_null: bool = False
    primary_key: bool = False
    format: str | None = None  # 格式要求
    example: str | None = None  # 示例数据

    @field_validator("type")
    @classmethod
    def _declared(cls, value: str) -> str:
        """Accept exactly what every agent can apply: the shared parser decides, not a copy of it."""
        try:
            return canonical.parse_type(value).declared
        except canonical.TypeSpecError as exc:
            raise ValueError(f"{exc} (expected e.g. VARCHAR2(50), NUMBER(10,2), DATE)") from None


FilterOp = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null", "like"]


class Condition(_Strict):
    """One condition of the row filter; all conditions are ANDed. Values are bound, never spliced."""

    column: NonEmpty
    op: FilterOp
    value: str | int | float | bool | dt.date | dt.datetime | None = None
    values: list[str | int | float] | None = None

    @model_validator(mode="after")
    def _arity(self) -> Condition:
        if self.op in ("in", "not_in"):
            if not self.values or self.value is not None:
                raise ValueError(f"op {self.op} takes a non-empty 'values' list and no 'value'")
        elif self.op in ("is_null", "not_null"):
            if self.value is not None or self.values is not None:
                raise ValueError(f"op {self.op} takes no value")
        elif self.value is None or self.values is not None:
            raise ValueError(f"op {self.op} takes exactly one 'value'")
        return self


class SoftDelete(_Strict):
    column: NonEmpty
    value: str | int | bool


class TableSource(_Strict):
    """Where the rows come from; only `columns` and rows passing `filter` ever leave it."""

    url: NonEmpty  # SQLAlchemy URL
    table: NonEmpty
    table_schema: str | None = Field(default=None, alias="schema")
    columns: list[NonEmpty] | None = None  # default: every dictionary column
    filter: list[Condition] = []
    cursor: str | None = "UPDATETIME"
    soft_delete: SoftDelete | None = None


class FileSource(_Strict):
    directory: Path
    include: list[NonEmpty] = ["**/*"]
    exclude: list[NonEmpty] = []


class Subscriber(_Strict):
    agent: Annotated[str, Field(pattern=AGENT_ID_PATTERN.pattern)]
    target: str | None = None  # the agent's target table name, if not the source's


def _source_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "file-source" if "directory" in value else "table-source"
    return "file-source" if isinstance(value, FileSource) else "table-source"


class Subscription(_Strict):
    id: Annotated[str, Field(pattern=SUBSCRIPTION_ID.pattern)]
    catalog: CatalogEntry
    dictionary: list[Column] = []
    source: Annotated[
        Annotated[TableSource, Tag("table-source")] | Annotated[FileSource, Tag("file-source")],
        Discriminator(_source_kind),
    ]
    subscribers: list[Subscriber] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Subscription:
        if self.catalog.provision_method == "table":
            self._check_table()
        elif not isinstance(self.source, FileSource):
            raise ValueError("provision_method file needs a file source (directory, include, exclude)")
        agents = [s.agent for s in self.subscribers]
        if len(set(agents)) != len(agents):
            raise ValueError("an agent is listed twice in subscribers")
        return self

    def _check_table(self) -> None:
        source = self.source
        if not isinstance(source, TableSource):
            raise ValueError("provision_method table needs a table source (url, table, columns)")
        names = [c.name for c in self.dictionary]
        if not names:
            raise ValueError("a table subscription needs a data dictionary")
        if len(set(names)) != len(names):
            raise ValueError("a column is listed twice in the dictionary")
        if not any(c.primary_key for c in self.dictionary):
            raise ValueError("the dictionary declares no primary key column")
        if source.columns is not None and sorted(source.columns) != sorted(names):
            raise ValueError(
                f"source.columns {source.columns} must list exactly the dictionary columns {names}"
            )
        if source.cursor is not None and source.cursor not in names:
            raise ValueError(f"cursor column {source.cursor!r} is not in the dictionary")

    @property
    def table_source(self) -> TableSource:
        assert isinstance(self.source, TableSource)
        return self.source

    @property
    def file_source(self) -> FileSource:
        assert isinstance(self.source, FileSource)
        return self.source

    @property
    def key_columns(self) -> list[str]:
        return [c.name for c in self.dictionary if c.primary_key]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.dictionary]

    def capture_fingerprint(self) -> str:
        """What the published state depends on: the dictionary and the source (not the subscribers)."""
        basis = {"dictionary": self.dictionary_json(), "source": self.source.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(basis, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def dictionary_json(self) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in self.dictionary]

    def target_for(self, agent_id: str) -> str | None:
        for s in self.subscribers:
            if s.agent == agent_id:
                if self.catalog.provision_method != "table":
                    return None
                return s.target or self.table_source.table
        return None


# ---------------------------------------------------------------- loading with line numbers


def _construct(node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if not isinstance(key, str):
                raise CatalogError(f"line {key_node.start_mark.line + 1}: keys must be strings, got {key!r}")
            if key in out:
                raise CatalogError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            field_path = (*path, key)
            out[key] = _construct(value_node, field_path, lines)
            lines[field_path] = key_node.start_mark.line + 1  # the line that names the field
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _iter_documents(text: str) -> Iterator[yaml.Node]:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        yield node


def parse_subscription(text: str, source_name: str) -> Subscription:
    """Parse and validate one subscription document; errors name file, line and field."""
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        nodes = list(_iter_documents(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise CatalogError(f"{source_name}:{where}: not valid YAML: {exc}") from exc
    except CatalogError as exc:
        raise CatalogError(f"{source_name}: {exc}") from exc
    if not nodes or not isinstance(nodes[0], yaml.MappingNode):
        raise CatalogError(
            f"{source_name}:1: a subscription file is one mapping (id, catalog, dictionary, ...)"
        )
    try:
        data = _construct(nodes[0], (), lines)
    except CatalogError as exc:
        raise CatalogError(f"{source_name}: {exc}") from exc
    try:
        return Subscription.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(_describe(exc, source_name, lines)) from None


def _describe(exc: ValidationError, source_name: str, lines: dict[tuple[str | int, ...], int]) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("table-source", "file-source"))
        line = 1
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        field = ".".join(str(p) for p in loc) or "(document)"
        messages.append(f"{source_name}:{line}: {field}: {err['msg']}")
    return "\n".join(dict.fromkeys(messages))


def load_subscription(path: Path) -> Subscription:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read: {exc}") from exc
    return parse_subscription(text, str(path))
