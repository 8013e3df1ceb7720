-- Kerbside hub store, version 8: the console's history. Each unit's recent history (hub/src/history.rs):
-- one sample per unit per time bucket (every [sync] history_every_s), kept about a day. The
-- sample is JSON: lag, age of the oldest missing change, audit backlog, records, connected.
CREATE TABLE unit_history (
    bucket bigint NOT NULL,
    device text COLLATE "C" NOT NULL,
    connected boolean NOT NULL,
    sample jsonb NOT NULL,
    PRIMARY KEY (bucket, device)
);
CREATE INDEX unit_history_device ON unit_history (device, bucket);

-- The feeds' recent ingests for the console (hub/src/ingest_log.rs): the latest few hundred,
-- each a JSON report (counts, the first rejected lines and warnings).
CREATE TABLE ingest_log (
    id bigserial PRIMARY KEY,
    entry jsonb NOT NULL
);
