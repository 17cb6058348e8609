"""Demo data: realistic businesses, people, customers, work orders and invoices, loaded by COPY."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from . import db
from .errors import AlreadySeeded, SeedError

Progress = Callable[[str, int, int], None]

INDUSTRIES = ("home_services", "restaurant", "automotive", "retail")
# Every business gets one person per role: the membership rows the RLS policies key on.
STAFF_ROLES = ("owner", "manager", "technician")
INVOICES_PER_CUSTOMER = 2
# One COPY statement per batch: each statement's transition table (read by the audit
# trigger) then fits in _WORK_MEM instead of spilling a million rows to a temporary file.
_BATCH_ROWS = 100_000
_WORK_MEM = "64MB"
# Version 4 (random) and RFC 4122 variant bits, set on random 128-bit integers.
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_V4 = (0x4 << 76) | (0x2 << 62)
_SCHEMA_TABLES = (
    "auth.users", "business_core.businesses", "business_core.user_profiles",
    "business_core.user_roles", "business_core.customers", "business_core.invoices",
    "business_hs.work_orders", "business_core.industry_types",
)  # fmt: skip

_COPY_BUSINESSES = (
    "COPY business_core.businesses (id, name, slug, industry, email, phone, timezone, created_at)"
    " FROM STDIN (FORMAT csv)"
)
_COPY_USERS = "COPY auth.users (id, email, created_at) FROM STDIN (FORMAT csv)"
_COPY_PROFILES = (
    "COPY business_core.user_profiles (user_id, business_id, full_name, email, phone, created_at)"
    " FROM STDIN (FORMAT csv)"
)
_COPY_ROLES = (
    "COPY business_core.user_roles (user_id, business_id, role, granted_at) FROM STDIN (FORMAT csv)"
)
_COPY_CUSTOMERS = (
    "COPY business_core.customers (id, business_id, name, email, phone, notes, created_at)"
    " FROM STDIN (FORMAT csv)"
)
_COPY_WORK_ORDERS = (
    "COPY business_hs.work_orders (id, business_id, customer_id, status, priority, scheduled_for,"
    " completed_at, description, created_at) FROM STDIN (FORMAT csv)"
)
_COPY_INVOICES = (
    "COPY business_core.invoices (id, business_id, customer_id, number, status, total, issued_at,"
    " due_at, paid_at, created_at) FROM STDIN (FORMAT csv)"
)

_FIRST = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda",
    "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
    "Thomas", "Sarah", "Carlos", "Maria", "Wei", "Aisha", "Mateo", "Priya",
    "Noah", "Olivia", "Liam", "Emma", "Hiroshi", "Fatima", "Diego", "Sofia",
    "Kwame", "Amara", "Lucas", "Chloe", "Omar", "Leila", "Ethan", "Grace",
)  # fmt: skip
_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas",
    "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
    "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
    "Allen", "King", "Wright", "Scott", "Nguyen", "Patel", "Kim", "Chen",
)  # fmt: skip
_TOWNS = (
    "Riverside", "Oakmont", "Lakeview", "Cedar", "Maple", "Summit", "Harbor", "Pine", "Granite",
    "Willow",
)  # fmt: skip
_TIMEZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
_NAME_PATTERNS = {
    "home_services": ("{last} Plumbing", "{town} HVAC", "{last} & Sons Electric", "{town} Roofing"),
    "restaurant": ("{town} Bistro", "The {last} Kitchen", "{town} Taqueria", "{last}'s Grill"),
    "automotive": ("{last} Auto Repair", "{town} Tire & Brake", "{last} Collision", "{town} Motors"),
    "retail": ("{town} Hardware", "{last} Outfitters", "{town} Books", "{last} Garden Supply"),
}  # fmt: skip
_WORK = (
    "Replace water heater", "Annual furnace tune-up", "Fix leaking kitchen faucet",
    "Install ceiling fan", "Inspect roof after storm", "Unclog main sewer line",
    "Repair walk-in cooler compressor", "Service fryer gas line", "Replace storefront lock",
    "Install EV charger in garage", "Troubleshoot breaker tripping", "Clean dryer vent",
    "Replace AC capacitor", "Patch drywall, paint to match", "Install water softener",
    "Seal driveway cracks", "Mount signage, run power", "Repair garage door opener",
)  # fmt: skip
# (value, share) pairs drawn by _weighted.
_WORK_STATUS = (
    ("completed", 0.55),
    ("scheduled", 0.25),
    ("in_progress", 0.10),
    ("cancelled", 0.10),
)
_PRIORITY = (("normal", 0.6), ("low", 0.15), ("high", 0.2), ("urgent", 0.05))
_INVOICE_STATUS = (("paid", 0.6), ("sent", 0.2), ("overdue", 0.1), ("draft", 0.07), ("void", 0.03))
_NOTES = (
    "", "", "", "", "Gate code 4411", "Prefers text messages", "Dog in the yard", "Net-30 account",
)  # fmt: skip


@dataclass(frozen=True)
class SeedResult:
    """Rows loaded per table and how long the load took."""

    businesses: int
    users: int
    customers: int
    work_orders: int
    invoices: int
    seconds: float

    def to_rows(self) -> list[tuple[str, int]]:
        """Return (table, rows) pairs for display; profiles and roles are one per user."""
        return [
            ("business_core.businesses", self.businesses),
            ("auth.users", self.users),
            ("business_core.user_profiles", self.users),
            ("business_core.user_roles", self.users),
            ("business_core.customers", self.customers),
            ("business_hs.work_orders", self.work_orders),
            ("business_core.invoices", self.invoices),
        ]


def seed(
    conn: Any,
    *,
    businesses: int,
    work_orders_per_business: int = 1000,
    customers_per_business: int = 50,
    random_seed: int = 42,
    progress: Progress | None = None,
) -> SeedResult:
    """Load demo data into a freshly migrated, empty database in one transaction.

    Businesses take the four industries in turn; each gets len(STAFF_ROLES) users (auth.users,
    a profile and a role each), ``customers_per_business`` customers, INVOICES_PER_CUSTOMER
    invoices per customer and ``work_orders_per_business`` work orders: every industry
    dispatches field jobs, so 1,000 businesses give 1,000,000 work orders. Row contents follow
    from ``random_seed``; dates are relative to today. Auditing stays on: the statement-level
    audit triggers log every row with one set-based INSERT per COPY batch, which is what
    keeps a million-row load fast without leaving rows the audit log cannot account for.

    The caller owns ``conn``; seed commits at the end and rolls back on any error (work the
    caller left uncommitted on ``conn`` shares that fate).

    Raises SeedError when the arguments are out of range, the schema is missing, the
    database already holds businesses, or the server rejects the data.
    """
    if businesses < 1:
        raise SeedError(
            f"businesses must be at least 1, got {businesses}", "ask for 1 or more businesses"
        )
    if work_orders_per_business < 0 or customers_per_business < 1:
        raise SeedError(
            f"work_orders_per_business={work_orders_per_business}, "
            f"customers_per_business={customers_per_business} is out of range",
            "give 0 or more work orders and at least 1 customer per business",
        )
    started = time.perf_counter()
    was_autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            _check_database(cur)
            plan = _Plan(
                businesses,
                work_orders_per_business,
                customers_per_business,
                random.Random(random_seed),
            )
            _load(cur, plan, progress)
        conn.commit()
    except BaseException as exc:
        conn.rollback()
        if isinstance(exc, db.DatabaseError):
            raise SeedError(
                f"the server rejected the demo data (SQLSTATE {db.sqlstate(exc)}): {db.error_message(exc)}",
                "check that every migration is applied (thorbis-runbook apply) and seed a fresh database",
            ) from exc
        raise
    finally:
        conn.autocommit = was_autocommit
    users = businesses * len(STAFF_ROLES)
    customers = businesses * customers_per_business
    return SeedResult(
        businesses=businesses,
        users=users,
        customers=customers,
        work_orders=businesses * work_orders_per_business,
        invoices=customers * INVOICES_PER_CUSTOMER,
        seconds=round(time.perf_counter() - started, 3),
    )


def _check_database(cur: Any) -> None:
    """Refuse a database without the schema, or one that already holds businesses."""
    cur.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NULL",
        (list(_SCHEMA_TABLES),),
    )
    missing = [row[0] for row in cur.fetchall()]
    if missing:
        raise SeedError(
            f"the Thorbis schema is missing from this database (no table {missing[0]})",
            "apply the migrations first: thorbis-runbook apply",
        )
    cur.execute("SELECT count(*) FROM business_core.industry_types")
    if cur.fetchone()[0] < len(INDUSTRIES):
        raise SeedError(
            "the reference data is missing from this database (business_core.industry_types is incomplete)",
            "apply the migrations first: thorbis-runbook apply",
        )
    # SET LOCAL: the caller's session keeps its own work_mem after commit.
    cur.execute("SELECT set_config('work_mem', %s, true)", (_WORK_MEM,))
    # Serializes concurrent seeds of one database: the second waits, then sees businesses.
    cur.execute("LOCK TABLE business_core.businesses IN SHARE ROW EXCLUSIVE MODE")
    cur.execute("SELECT count(*) FROM business_core.businesses")
    existing = cur.fetchone()[0]
    if existing:
        raise AlreadySeeded(
            f"this database already holds {existing} businesses; seed only loads an empty schema",
            "to reseed, create a fresh database, run thorbis-runbook apply, then seed it",
        )


class _Plan:
    """The generated entities later tables point at (ids, names), built once, reproducibly."""

    def __init__(
        self, businesses: int, work_orders: int, customers: int, rng: random.Random
    ) -> None:
        self.rng = rng
        self.work_orders = work_orders
        self.customers_per_business = customers
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        # Half-hour appointment slots from 400 days back to 60 days ahead, formatted once:
        # formatting a datetime per row would cost more than generating the row.
        self.slots = [
            (today + timedelta(minutes=30 * i)).strftime("%Y-%m-%d %H:%M:%S+00")
            for i in range(-400 * 48, 60 * 48)
        ]
        self.today_slot = 400 * 48
        self.business_ids = [self.uuid() for _ in range(businesses)]
        self.industries = [INDUSTRIES[i % len(INDUSTRIES)] for i in range(businesses)]
        self.slugs: list[str] = []
        self.names: list[str] = []
        for i, industry in enumerate(self.industries):
            pattern = rng.choice(_NAME_PATTERNS[industry])
            name = pattern.format(last=rng.choice(_LAST), town=rng.choice(_TOWNS))
            self.names.append(name)
            slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
            self.slugs.append("-".join(filter(None, slug.split("-"))) + f"-{i + 1}")

    def uuid(self) -> str:
        """A version-4 UUID drawn from the seeded generator, as 32 hex digits.

        Every COPY supplies its ids: a volatile column default such as gen_random_uuid()
        makes COPY insert row by row instead of in multi-row batches, and costs a
        strong-random call per row besides.
        """
        return f"{self.rng.getrandbits(128) & _UUID_CLEAR | _UUID_V4:032x}"

    def slot(self, low_days: int, high_days: int) -> int:
        """Index of a random slot between ``low_days`` and ``high_days`` from today."""
        return self.today_slot + int(self.rng.uniform(low_days, high_days) * 48)

    def person(self) -> tuple[str, str]:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        return f"{first} {last}", f"{first}.{last}".lower()

    def phone(self) -> str:
        # 555-0100..0199 is the range reserved for fiction: no real number gets called.
        return f"+1-{self.rng.randint(201, 989)}-555-01{self.rng.randint(0, 99):02d}"


def _load(cur: Any, plan: _Plan, progress: Progress | None) -> None:
    n = len(plan.business_ids)
    users = n * len(STAFF_ROLES)
    customers = n * plan.customers_per_business
    staff = _staff(plan)
    customer_ids = [[plan.uuid() for _ in range(plan.customers_per_business)] for _ in range(n)]
    # Parents before children; the generators draw from plan.rng lazily, in this order.
    steps: tuple[tuple[str, str, int, Iterable[str]], ...] = (
        (_COPY_BUSINESSES, "business_core.businesses", n, _businesses(plan)),
        (_COPY_USERS, "auth.users", users, (s[0] for s in staff)),
        (_COPY_PROFILES, "business_core.user_profiles", users, (s[1] for s in staff)),
        (_COPY_ROLES, "business_core.user_roles", users, (s[2] for s in staff)),
        (_COPY_CUSTOMERS, "business_core.customers", customers, _customers(plan, customer_ids)),
        (_COPY_WORK_ORDERS, "business_hs.work_orders", n * plan.work_orders,
         _work_orders(plan, customer_ids)),
        (_COPY_INVOICES, "business_core.invoices", customers * INVOICES_PER_CUSTOMER,
         _invoices(plan, customer_ids)),
    )  # fmt: skip
    for statement, table, total, rows in steps:
        _copy(cur, statement, table, total, iter(rows), progress)


def _copy(
    cur: Any, statement: str, table: str, total: int, rows: Iterator[str], progress: Progress | None
) -> None:
    """COPY ``total`` CSV lines from ``rows`` in statements of at most _BATCH_ROWS lines."""
    report = progress or (lambda _table, _done, _total: None)
    report(table, 0, total)
    for start in range(0, total, _BATCH_ROWS):
        size = min(_BATCH_ROWS, total - start)
        reader = _LineReader(rows, size, partial(_report_batch, report, table, start, total))
        cur.copy_expert(statement, reader, size=1 << 16)


def _report_batch(report: Progress, table: str, start: int, total: int, sent: int) -> None:
    report(table, start + sent, total)


class _LineReader:
    """A file whose read(size) streams the next ``rows`` lines of an iterator to COPY.

    Lines are encoded a chunk at a time, so a million-row string is never built, and each
    chunk reports the running count to ``on_chunk`` (the progress bar moves while COPY runs).
    """

    _LINES_PER_CHUNK = 2000

    def __init__(self, lines: Iterator[str], rows: int, on_chunk: Callable[[int], None]) -> None:
        self._lines = lines
        self._rows = rows
        self._sent = 0
        self._on_chunk = on_chunk
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while self._sent < self._rows and (size < 0 or len(self._buffer) < size):
            take = min(self._rows - self._sent, self._LINES_PER_CHUNK)
            self._buffer += "".join([next(self._lines) for _ in range(take)]).encode()
            self._sent += take
            self._on_chunk(self._sent)
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def _csv(text: str) -> str:
    """Quote a field for CSV: demo texts hold commas and apostrophes."""
    return '"' + text.replace('"', '""') + '"'


def _weighted(rng: random.Random, choices: tuple[tuple[str, float], ...]) -> str:
    point = rng.random()
    for value, weight in choices:
        point -= weight
        if point < 0:
            return value
    return choices[-1][0]


def _businesses(plan: _Plan) -> Iterator[str]:
    for i, business_id in enumerate(plan.business_ids):
        created = plan.slots[plan.slot(-400, -380)]
        timezone = plan.rng.choice(_TIMEZONES)
        yield (
            f"{business_id},{_csv(plan.names[i])},{plan.slugs[i]},{plan.industries[i]},"
            f"office@{plan.slugs[i]}.example,{plan.phone()},{timezone},{created}\n"
        )


def _staff(plan: _Plan) -> list[tuple[str, str, str]]:
    """(auth.users, user_profiles, user_roles) CSV lines for each business's staff."""
    lines = []
    for i, business_id in enumerate(plan.business_ids):
        for j, role in enumerate(STAFF_ROLES):
            user_id = plan.uuid()
            full_name, handle = plan.person()
            # The digit keeps two namesakes on one staff apart (handles hold no digits).
            email = f"{handle}{j or ''}@{plan.slugs[i]}.example"
            joined = plan.slots[plan.slot(-380, -300)]
            lines.append((
                f"{user_id},{email},{joined}\n",
                f"{user_id},{business_id},{_csv(full_name)},{email},{plan.phone()},{joined}\n",
                f"{user_id},{business_id},{role},{joined}\n",
            ))  # fmt: skip
    return lines


def _customers(plan: _Plan, customer_ids: list[list[str]]) -> Iterator[str]:
    for i, business_id in enumerate(plan.business_ids):
        for k, customer_id in enumerate(customer_ids[i]):
            full_name, handle = plan.person()
            notes = plan.rng.choice(_NOTES)
            yield (
                f"{customer_id},{business_id},{_csv(full_name)},{handle}.{k}@example.com,"
                f"{plan.phone()},{_csv(notes) if notes else ''},{plan.slots[plan.slot(-380, -30)]}\n"
            )


def _work_orders(plan: _Plan, customer_ids: list[list[str]]) -> Iterator[str]:
    rng, slots, today, new_id = plan.rng, plan.slots, plan.today_slot, plan.uuid
    random_ = rng.random
    descriptions = [_csv(text) for text in _WORK]
    n_desc = len(descriptions)
    for i, business_id in enumerate(plan.business_ids):
        customers = customer_ids[i]
        n_cust = len(customers)
        for _ in range(plan.work_orders):
            status = _weighted(rng, _WORK_STATUS)
            if status == "completed":
                scheduled = today - 8 - int(random_() * 360 * 48)
                completed = slots[scheduled + 2 + int(random_() * 6)]
            else:
                # Open jobs sit around today; cancelled ones anywhere in the past year.
                low = -360 * 48 if status == "cancelled" else -7 * 48
                scheduled = today + low + int(random_() * (abs(low) + 59 * 48))
                completed = ""
            created = slots[max(0, scheduled - 48 - int(random_() * 20 * 48))]
            yield (
                f"{new_id()},{business_id},{customers[int(random_() * n_cust)]},{status},"
                f"{_weighted(rng, _PRIORITY)},{slots[scheduled]},{completed},"
                f"{descriptions[int(random_() * n_desc)]},{created}\n"
            )


def _invoices(plan: _Plan, customer_ids: list[list[str]]) -> Iterator[str]:
    rng, slots = plan.rng, plan.slots
    for i, business_id in enumerate(plan.business_ids):
        number = 0
        for customer_id in customer_ids[i]:
            for _ in range(INVOICES_PER_CUSTOMER):
                number += 1
                status = _weighted(rng, _INVOICE_STATUS)
                total = f"{rng.uniform(75, 4800):.2f}"
                created = plan.slot(-360, -45)
                issued = due = paid = ""
                if status != "draft":
                    issued = slots[created + 1]
                    due = slots[created + 1 + 30 * 48]
                if status == "paid":
                    paid = slots[created + 1 + int(rng.uniform(1, 40) * 48)]
                yield (
                    f"{plan.uuid()},{business_id},{customer_id},INV-{number:06d},{status},{total},"
                    f"{issued},{due},{paid},{slots[created]}\n"
                )
