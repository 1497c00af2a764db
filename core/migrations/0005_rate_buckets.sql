-- Fixed rate caps of the verification lanes (an agreement with a ministry: at most N calls a
-- second, whatever the number of workers). One token bucket per lane, shared by its workers;
-- see workers.flow.SharedRateCap. No personal data.
CREATE TABLE rate_buckets (
    lane        text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL
);
