-- Kerbside hub store, version 1: the change feed, patients' current state and summaries, the
-- alias table of former NHS numbers, and the units' records. Values are the CBOR the sled
-- store writes (hub/src/store.rs); columns are what the database selects, orders or counts on.
-- Identifiers and NHS numbers use the "C" collation so their order is byte order, as in sled.

-- One row: the highest feed position issued and the lowest retained. Every feed writer takes
-- this row FOR UPDATE first, so positions are taken and committed one transaction at a time.
CREATE TABLE feed_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    head bigint NOT NULL,
    oldest bigint NOT NULL
);
INSERT INTO feed_head (id, head, oldest) VALUES (1, 0, 0);

CREATE TABLE feed (
    seq bigint PRIMARY KEY,
    nhs text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    -- When the entry was written (Unix ms): compaction keeps entries younger than the retention.
    at bigint NOT NULL,
    entry bytea NOT NULL
);

CREATE TABLE patient_current (
    nhs text COLLATE "C" PRIMARY KEY,
    seq bigint NOT NULL,
    version bigint NOT NULL,
    withdrawn boolean NOT NULL,
    cur bytea NOT NULL
);
CREATE INDEX patient_current_live ON patient_current (nhs) WHERE NOT withdrawn;

CREATE TABLE patient_summary (
    nhs text COLLATE "C" PRIMARY KEY,
    body bytea NOT NULL
);

CREATE TABLE nhs_alias (
    former text COLLATE "C" PRIMARY KEY,
    current text COLLATE "C" NOT NULL
);

CREATE TABLE device (
    id text COLLATE "C" PRIMARY KEY,
    rec bytea NOT NULL
);
