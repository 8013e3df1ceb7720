-- Kerbside hub store, version 6: a patient's routing facts as columns, so a unit's baseline
-- reads only its cohort. Before this every baseline page read `patient_current` in NHS order
-- and filtered in the hub: a unit whose cohort is three postcode districts read every patient
-- the hub holds (7.5 million for London) to find its few tens of thousands.
--
-- NULL `flagged` marks a row written before this migration (or by an older hub during a
-- rolling upgrade): cohort queries read such rows too and filter them in the hub, and a hub
-- fills the columns in at start (PgStore::connect).
ALTER TABLE patient_current
    ADD COLUMN district text COLLATE "C",
    ADD COLUMN practice text COLLATE "C",
    ADD COLUMN flagged boolean,
    ADD COLUMN critical boolean;

-- Each cohort element is one ordered range scan: (district, nhs), (practice, nhs), flagged.
CREATE INDEX patient_current_district ON patient_current (district, nhs) WHERE NOT withdrawn;
CREATE INDEX patient_current_practice ON patient_current (practice, nhs) WHERE NOT withdrawn;
CREATE INDEX patient_current_flagged ON patient_current (nhs) WHERE flagged AND NOT withdrawn;
CREATE INDEX patient_current_unrouted ON patient_current (nhs) WHERE flagged IS NULL;
