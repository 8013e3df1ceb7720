//! Fleet PKI and enrolment for Kerbside (filled by the fleet-provisioning issue).
