"""Which items each table waits for in a pg_restore listing, and when a verbose restore completes it."""

from __future__ import annotations

from thorbis_runbook.recovery.restore import RestoreProgress, table_waits

# The shape of `pg_restore --list --verbose`: two tables, customers referenced by work_orders.
LISTING = """\
;
; Archive created at 2026-12-02 06:16:45 UTC
;
; Selected TOC Entries:
;
12; 2615 16487 SCHEMA - business_core postgres
240; 1259 16600 TABLE business_core customers postgres
;\tdepends on: 12
242; 1259 16700 TABLE business_hs work_orders postgres
;\tdepends on: 8
243; 1259 16800 TABLE business_core odd table postgres
;\tdepends on: 12
2964; 0 16600 TABLE DATA business_core customers postgres
;\tdepends on: 240
2966; 0 16700 TABLE DATA business_hs work_orders postgres
;\tdepends on: 242
2967; 0 16800 TABLE DATA business_core odd table postgres
;\tdepends on: 243
2645; 2606 16652 CONSTRAINT business_core customers customers_business_id_id_key postgres
;\tdepends on: 240 240
2648; 1259 16996 INDEX business_core customers_search_idx postgres
;\tdepends on: 240 240 240
2659; 2606 16710 CONSTRAINT business_hs work_orders work_orders_pkey postgres
;\tdepends on: 242
2701; 2606 16713 FK CONSTRAINT business_hs work_orders work_orders_customer_fkey postgres
;\tdepends on: 2645 240 240 242 242
2725; 2620 16800 TRIGGER business_core customers audit_insert postgres
;\tdepends on: 240 251
3000; 0 0 ACL business_core TABLE customers postgres
;\tdepends on: 240
"""


def test_a_table_waits_for_its_data_indexes_constraints_and_the_foreign_keys_to_it() -> None:
    waits = table_waits(LISTING)
    assert waits["business_core.customers"] == {2964, 2645, 2648, 2701, 2725}  # not the ACL
    assert waits["business_hs.work_orders"] == {2966, 2659, 2701}
    assert "business_core.odd" not in waits and len(waits) == 2  # a name with a space: left out


def test_progress_completes_a_table_when_its_last_item_is_reported_and_counts_workers() -> None:
    progress = RestoreProgress(table_waits(LISTING))
    assert progress.feed("pg_restore: processing item 240 TABLE customers") == []
    assert progress.feed("pg_restore: launching item 2964 TABLE DATA customers") == []
    assert progress.feed("pg_restore: launching item 2966 TABLE DATA work_orders") == []
    assert progress.running == 2
    assert progress.feed("pg_restore: finished item 2964 TABLE DATA customers") == []
    assert progress.running == 1
    for item in (2645, 2648, 2725, 2966):
        assert progress.feed(f"pg_restore: finished item {item} X y") == []
    assert progress.feed("pg_restore: finished item 2659 CONSTRAINT work_orders pk") == []
    assert progress.feed("pg_restore: skipping item 2701 FK CONSTRAINT work_orders fk") == [
        "business_core.customers",
        "business_hs.work_orders",
    ]
    assert progress.feed("pg_restore: finished item 3000 ACL TABLE customers") == []
    assert progress.feed("pg_restore: error: could not execute query: finished item 7") == []
