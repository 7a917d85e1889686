"""Publishing ImagingStudy resources to a FHIR server after STOW-RS (``[fhir] publish_url``).

The flow, one module each::

    routes/stow.py  --enqueue(upstream, study)-->  Publisher (publisher.py)
                                                   ├── Outbox (outbox.py): one file per study, coalescing, bounded
                                                   └── StudyPublisher (upsert.py): build the ImagingStudy from C-FIND
                                                       (an injected builder), then FhirServer (server.py) PUTs it
                                                       and its Endpoints; credentials from auth.py, waits from retry.py

The resource builders are injected (their contracts: ``builders.py``); ``wiring.py`` binds
those of :mod:`gateway.fhir`, and ``command.py`` is the ``dicomweb-gateway publish`` command.
"""
