"""Stage 1, get: public datasets from the internet into the store.

    download.py     verified, resumable downloads (fetch), zips streamed into the store (extract_to_store),
                    and the job that overlaps the two (Job) - datasets/getcoco.py, datasets/getcityscapes.py
    cityscapes.py   the Cityscapes site: credentials, login, package list, md5 sums
"""
