"""Stage 1, get: public datasets from the internet into the store.

    fetch.py        verified, resumable downloads of one URL (fetch, FileSpec, safe_url); verify_local for a file
                    the user downloaded (login-gated datasets)
    extract.py      zips and tars (.tar, .tgz) streamed into the store, member checks, manifests (extract_to_store)
    download.py     the job that overlaps the two (Job), its checksum table, progress and time estimate
                    - datasets/getcoco.py, datasets/getcityscapes.py, datasets/getdataset.py (the registry's
                    datasets: mllib/sources/registry.py)
    cityscapes.py   the Cityscapes site: credentials, login, package list, md5 sums
"""
