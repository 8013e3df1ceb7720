-- Kerbside hub store, version 2: the audit repository of record. Every access event every unit
-- uploads, stored once whichever hub receives it, and each device's chain summary.
--
-- Not partitioned. The repository is idempotent on (device, seq) and a conflicting replay (same
-- seq, different event) must be caught; PostgreSQL can enforce a unique key on a partitioned
-- table only when the key holds the partition key, so a time-partitioned table would enforce
-- (device, seq, recorded), and a conflicting event with another time would slip into another
-- partition. One table with B-tree indexes serves the queries at London's volume (order 10^7
-- events a year); retention deletes old rows in batches (docs/hub.md).

-- One row per device: the chain as far as it has arrived. Uploads of a device take this row
-- FOR UPDATE first, so two hubs storing the same device's events take turns and every event is
-- stored exactly once.
CREATE TABLE audit_device (
    device text COLLATE "C" PRIMARY KEY,
    events bigint NOT NULL,
    last_seq bigint NOT NULL,
    last_hash bytea,
    -- Problems found on arrival (chain breaks, gaps, conflicting replays), newest last, at most
    -- 1,000.
    problems text[] NOT NULL
);

CREATE TABLE audit_event (
    device text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    -- The event's own time (Unix ms), as the unit recorded it.
    recorded bigint NOT NULL,
    -- NHS number (digits) and staff id, for "who accessed patient X" and "what did Y access".
    patient text COLLATE "C",
    staff text COLLATE "C",
    -- Break-glass accesses and security alerts: the review list.
    alert boolean NOT NULL,
    hash bytea NOT NULL,
    -- The whole event (CBOR), as the unit sealed it.
    body bytea NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX audit_event_patient ON audit_event (patient, recorded, device, seq)
    WHERE patient IS NOT NULL;
CREATE INDEX audit_event_staff ON audit_event (staff, recorded, device, seq)
    WHERE staff IS NOT NULL;
CREATE INDEX audit_event_alert ON audit_event (recorded, device, seq) WHERE alert;
CREATE INDEX audit_event_recorded ON audit_event (recorded, device, seq);

-- The operator log: every admin API call with the operator's identity, from every hub, newest
-- first by id. `entry` is the JSON the admin API answers (hub/src/oplog.rs).
CREATE TABLE operator_log (
    id bigserial PRIMARY KEY,
    at bigint NOT NULL,
    entry jsonb NOT NULL
);
