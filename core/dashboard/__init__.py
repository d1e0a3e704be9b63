"""What the Streamlit pages do, without Streamlit: each page in pages/ calls its own module here.

home, verify, review, members, kpis, retrain, users   one module per page
access        pages, roles, sign-in expiry, refusals audited
formatting    times, numbers, rates with counts, flag sentences, CSV
photos        boxes, crops, similarity bar       uploads   accepted files, batch upload checks
page_batches  batches the pages run in the background (or hand to core.jobs)
kpi_targets   the targets the KPI charts draw
training_sets the Retrain page's data: reviewed decisions, an uploaded ZIP, a server folder

May import: core.verification, core.storage, core.workflows, core.training, core.i18n. Never streamlit."""
