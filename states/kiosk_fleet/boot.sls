{#- Startup state for kiosks (minion config: startup_states: sls,
    sls_list: [kiosk_fleet.boot]): tell the fleet this kiosk is up, so the
    top master's kiosk/boot reactor syncs the pack to it. #}
announce_kiosk_boot:
  module.run:
    - event.send:
      - tag: kiosk/boot
      - data:
          campus: {{ grains.get('campus', '') | json }}
