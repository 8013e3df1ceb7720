-- Kerbside hub store, version 5: compress the large values (summaries and feed entries, about
-- 2 KB of CBOR each, so many cross the TOAST threshold) with lz4 rather than PostgreSQL's
-- default pglz: on ingest, pglz was a large share of the database's CPU for a few per cent of
-- disk (BENCHMARKS.md "Hub ingest into PostgreSQL"). Applies to values written from now on;
-- a server built without lz4 keeps pglz (the migration still succeeds).
DO $$
BEGIN
    ALTER TABLE feed ALTER COLUMN entry SET COMPRESSION lz4;
    ALTER TABLE patient_summary ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE audit_event ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available in this server: large values stay pglz-compressed';
END
$$;
