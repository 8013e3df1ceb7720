-- Kerbside hub store, version 7: the privacy officer's reviews of break-glass accesses and
-- security alerts (one per event; hub/src/review.rs). The review itself is JSON: who reviewed,
-- when, and the note.
CREATE TABLE audit_review (
    device text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    review bytea NOT NULL,
    PRIMARY KEY (device, seq)
);
