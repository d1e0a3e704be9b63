"""Face-verification core: everything the pages, the API, the batch runner and the tests call.

No Streamlit import anywhere in this package: pages stay thin and call in here.
"""
