"""``intake demo``: a wave opening on a local stack of the system's own processes, from the
first registration to the last verification (:mod:`demo.run`), with the synthetic registrants'
selfies (:mod:`demo.selfies`) and the funnel read back from PostgreSQL (:mod:`demo.funnel`)."""
