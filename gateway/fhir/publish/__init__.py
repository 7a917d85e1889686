"""Publishing ImagingStudy resources to a FHIR server after STOW-RS (``[fhir] publish_url``).

The flow, one module each::

    routes/stow.py  --enqueue(upstream, study)-->  Publisher (publisher.py)
                                                   ├── Outbox (outbox.py): one file per study, coalescing, bounded
                                                   └── StudyPublisher (upsert.py): build the ImagingStudy from C-FIND
                                                       (an injected builder), then FhirServer (server.py) PUTs it
                                                       and its Endpoints; credentials from auth.py, waits from retry.py

``wiring.py`` binds the resource builders of :mod:`gateway.fhir` to these classes, and
``command.py`` is the ``dicomweb-gateway publish`` command.
"""
