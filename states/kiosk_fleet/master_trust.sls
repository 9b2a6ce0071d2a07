{#- Pin the campus master public key on a minion (a kiosk, or a Pi's own minion):
    <pki_dir>/minion_master.pub, the key this minion accepts from its masters.

    A minion compares each master's key with this file at every sign-in and refuses a
    master whose key differs (salt/crypt.py verify_master). So before a campus's Pi
    masters switch to the campus key pair (the first time, or a rotation), every kiosk of
    the campus must hold the new public key: salt-run kiosk_fleet.campus_trust applies this
    state with pillar
      kiosk_fleet_master_key: {public: <campus public key PEM>}
    (the public key only). No restart: the file is read at the next sign-in, so a kiosk
    that signs in to a Pi not yet switched is refused and retries until it is.

    Apply with: salt-run kiosk_fleet.campus_trust campus=riverside
    (a state.apply kiosk_fleet.master_trust to the campus's kiosks, the pillar above passed as pillar=) #}
{%- set key = salt['pillar.get']('kiosk_fleet_master_key', {}) %}

kiosk_fleet_master_trust:
  kiosk_fleet.master_pub:
    - name: {{ salt['file.join'](opts['pki_dir'], 'minion_master.pub') | json }}
    - public: {{ key.get('public') | json }}
